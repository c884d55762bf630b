"""Apply halting to an HF model the user already has, kvpress-style.

    with Halting(model, ratio=0.9) as halting:
        output_ids = model.generate(**inputs)
    print(halting.last_report.summary())
    print(halting.encoder_reports[-1].summary())  # with vision_ratio set

Inside the block the language model's ``forward`` is the engine's (and, with ``vision_ratio`` set,
the vision tower's is the encoder engine's); ``model.generate`` and ``model(...)`` are called as
usual. Each prompt (each new KV cache) is halted on its own.

One ``Halting`` at a time runs on a model: enabling a second one while another is enabled is a
``ValueError`` (blocks of different knobs do not nest); the same ``Halting`` may be entered again
inside its own block (each ``enable()`` is undone by one ``disable()``). Leaving a block, by an
exception too, restores the model's own forwards and removes every hook.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from torch import nn

from dash_vl.adapters import adapter_for
from dash_vl.config import HaltingConfig
from dash_vl.engine.language_model import HaltingEngine
from dash_vl.engine.vision_encoder import EncoderHaltingEngine, EncoderReport
from dash_vl.engine.vision_evidence import BeforeProjector, EvidenceRecorder
from dash_vl.knobs import documented
from dash_vl.report import HaltingReport

ENABLED: weakref.WeakKeyDictionary[nn.Module, Halting] = weakref.WeakKeyDictionary()
"""The language model of each model that runs under a :class:`Halting` now → that ``Halting``."""


@documented
class Halting:
    """Token halting on one HF model, as a context manager or with :meth:`enable` / :meth:`disable`.

    Args:
        model: an HF model of a family in :data:`dash_vl.adapters.ADAPTERS`.
        config: the knobs (:class:`dash_vl.HaltingConfig`); or give them as keywords:
            {knobs}
    """

    def __init__(self, model: nn.Module, config: HaltingConfig | None = None, **knobs: Any) -> None:
        self.config = HaltingConfig.resolve(config, knobs)
        self.adapter = adapter_for(model)
        self.engine = HaltingEngine(self.adapter, self.config)
        self.encoder_engine = self._encoder_engine()
        self._hook: Any = None
        self._restore_compile: Callable[[], None] = lambda: None
        self._depth = 0

    def _encoder_engine(self) -> EncoderHaltingEngine | None:
        """The encoder engine where ``vision_ratio`` is set; else ``None``."""
        if self.config.vision_ratio is None:
            return None
        if not self.adapter.has_visual_tokens:
            raise ValueError(f"vision_ratio needs a model with a vision encoder; {type(self.adapter.model).__name__} is text-only")
        return EncoderHaltingEngine(self.adapter.encoder_adapter(), self.config)

    def _before_projector(self) -> BeforeProjector | None:
        """The policy's rule for the feature function to run before the projector at the config's ratio, where
        the policy and the family both do (VisionZip and VisPruner on LLaVA-1.5 and LLaVA-NeXT) and something
        is halted; else ``None``."""
        method = self.engine.method
        if method.selects_before_projector and self.adapter.selects_before_projector and self.config.ratio > 0:
            return functools.partial(method.select_before_projector, self.adapter, ratio=self.config.ratio)
        return None

    @property
    def encoder_reports(self) -> list[EncoderReport]:
        """One report per call of the vision tower since the halting was built (``vision_ratio`` set): the
        patches and kept patches of each unit, and the blocks' ``relative_flops`` (``.summary()``)."""
        if self.encoder_engine is None:
            raise RuntimeError("encoder-side halting is off (vision_ratio is None); it has no reports")
        return self.encoder_engine.reports

    @property
    def reports(self) -> list[HaltingReport]:
        """One report per prefill since the halting was enabled."""
        return self.engine.reports

    @property
    def last_report(self) -> HaltingReport:
        if not self.engine.reports:
            raise RuntimeError("no prefill has run with halting yet")
        return self.engine.reports[-1]

    @property
    def enabled(self) -> bool:
        return self._depth > 0

    def enable(self) -> Halting:
        """Install the engine in the language model (again inside its own block: one more level).

        Raises:
            ValueError: if another ``Halting`` is enabled on the same model.
        """
        if self.enabled:
            self._depth += 1
            return self
        other = ENABLED.get(self.adapter.text_model)
        if other is not None:
            knobs = ", ".join(f"{name}={value}" for name, value in asdict(other.config).items())
            raise ValueError(
                f"this model already runs under another Halting ({knobs}); halting blocks do not nest: leave that "
                "block (or call its disable()) first; for a model from dash_vl.load, set vlm.halting = "
                "Halting(vlm.model, ...) instead of wrapping vlm.ask"
            )
        try:
            self._install()
        except BaseException:
            self._uninstall()
            raise
        ENABLED[self.adapter.text_model] = self
        self._depth = 1
        return self

    def disable(self) -> None:
        """Undo one :meth:`enable`; the last one restores the model's own forwards and removes the hooks."""
        if not self.enabled:
            return
        self._depth -= 1
        if self._depth == 0:
            self._uninstall()
            ENABLED.pop(self.adapter.text_model, None)

    def _install(self) -> None:
        self.adapter.text_model.forward = self.engine.forward
        self._restore_compile = self._keep_generate_from_compiling()
        self._hook = self.adapter.prompt_module.register_forward_pre_hook(self._remember_input_ids, with_kwargs=True)
        if self.engine.method.needs_vision_evidence:
            self.engine.evidence_recorder = EvidenceRecorder(self.adapter, self._before_projector())
            self.engine.evidence_recorder.install()
        if self.encoder_engine is not None:
            self.encoder_engine.adapter.tower.forward = self.encoder_engine.forward

    def _uninstall(self) -> None:
        """Remove whatever :meth:`_install` put in place (all of it, or the part done before an error)."""
        self.adapter.text_model.__dict__.pop("forward", None)
        self._restore_compile()
        self._restore_compile = lambda: None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.engine.evidence_recorder is not None:
            self.engine.evidence_recorder.remove()
            self.engine.evidence_recorder = None
        if self.encoder_engine is not None:
            self.encoder_engine.adapter.tower.__dict__.pop("forward", None)
        self.engine.prompt_input_ids = None

    def _keep_generate_from_compiling(self) -> Callable[[], None]:
        """Stop ``generate`` from compiling the model's forward on a static cache (the engine owns the decoder
        loop and records its own CUDA graphs, :mod:`dash_vl.engine.decode_graph`); returns what restores the setting."""
        generation_config = getattr(self.adapter.model, "generation_config", None)
        if generation_config is None:
            return lambda: None
        previous = generation_config.disable_compile
        generation_config.disable_compile = True
        return lambda: setattr(generation_config, "disable_compile", previous)

    def __enter__(self) -> Halting:
        return self.enable()

    def __exit__(self, *exc_info: object) -> None:
        self.disable()

    @contextmanager
    def question_length(self, tokens: int) -> Iterator[None]:
        """Within the block, the question is the last ``tokens`` prompt tokens of every sample."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"question length must be a positive int, got {tokens!r}")
        self.engine.question_tokens = tokens
        try:
            yield
        finally:
            self.engine.question_tokens = None

    def _remember_input_ids(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """The language model sees embeddings only; keep the prompt's ids for the visual mask."""
        self.engine.prompt_input_ids = kwargs.get("input_ids", args[0] if args else None)
