"""The knobs of token halting, in one validated dataclass."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Literal

from dash_vl.methods import METHODS

Scope = Literal["all", "visual"]
QuestionMode = Literal["halted", "protected", "after_context"]
PackingMode = Literal["off", "ragged", "always"]
VisionRule = Literal["dash", "random"]

SCOPES: tuple[str, ...] = ("all", "visual")
QUESTION_MODES: tuple[str, ...] = ("halted", "protected", "after_context")
PACKING_MODES: tuple[str, ...] = ("off", "ragged", "always")
VISION_RULES: tuple[str, ...] = ("dash", "random")


@dataclass(frozen=True)
class HaltingConfig:
    """How many prompt tokens are halted, where, and which ones may be.

    Attributes:
        method: name of the halting policy in :data:`dash_vl.methods.METHODS`: ``"dash"``, its
            ablations ``"dash_block"``, ``"dash_highest"``, ``"random"``, or the baselines
            ``"fastv"``, ``"dart"``, ``"visionzip"``, ``"vispruner"``, ``"divprune"``, ``"cdpruner"``,
            ``"pyramiddrop"`` and ``"snapkv"`` (see each module for its published rule); ``"dash_multi"``
            is DASH re-deciding at later layers; ``"dart_prompt_order"`` is DART with its pivots walked
            in prompt order (ours, not the official order).
        ratio: ρ in [0, 1), the fraction of *eligible* prompt tokens halted at the decision
            layer (for the visual baselines: the fraction of visual tokens dropped). ``0``, the
            default, halts nothing: the engine runs every layer on every token (identical to the unmodified model).
            With several decision layers (:attr:`stage_layers`), each decision halts ρ of the eligible
            tokens still active (PyramidDrop: ``λ = 1 - ρ`` is its retention per stage).
        start_layer: the decision layer ``l_s``, from which the halted tokens are left out. An ``int`` is a layer
            index in ``[1, L)`` (``0``, before the first layer, only for the pre-LLM methods, which must decide
            there); a
            ``float`` in (0, 1) is a fraction of ``L`` (``floor(start_layer * L)``, at least 1).
            Unset (``None``), the method's default: ``0.4`` for DASH and its ablations, layer
            ``2`` (the official ``K``) for FastV and DART, ``0`` (before the LLM) for VisionZip,
            VisPruner, DivPrune and CDPruner, ``0.25`` for PyramidDrop.
        stage_layers: the later decision layers, after ``start_layer`` and ascending: at each the
            method decides again over the tokens still active (multi-stage halting; every layer from
            one decision layer to the next runs on, and caches, that stage's active tokens). Each
            entry is an ``int`` layer index or a ``float`` fraction of the depth, as ``start_layer``.
            ``()``: one decision. Unset (``None``), the method's default: ``()`` for every method
            but PyramidDrop (``(0.5, 0.75)``, with ``start_layer`` 0.25 its official layers 8, 16,
            24 of 32) and ``dash_multi`` (``(0.6, 0.8)``). Only methods that can decide over a
            compacted prompt take it (DASH, its ablations, PyramidDrop, SnapKV).
        observation_window: SnapKV's observation window ``W``: the last ``W`` prompt tokens, whose
            attention picks the tokens kept (kvpress's default 64); an int >= 1.
        scope: ``"all"``: text and visual tokens are eligible (the paper's unified rule);
            ``"visual"``: only visual tokens are eligible. Unset (``None``), it becomes the
            method's default: ``"all"`` for DASH and its ablations, ``"visual"`` for the baselines.
        question: how the question (the prompt's trailing text) is treated.
            ``"halted"``: eligible like any other token (only the last prompt token is
            protected). ``"protected"``: never halted, but scored in the same single pass.
            ``"after_context"``: the reference protocol of the DASH paper (run inside kvpress):
            the context is prefilled with halting without the question, then the question is
            appended uncompressed, attending to the reduced cache.
            The question is the text after the last visual token, unless the caller gives its
            length with :meth:`dash_vl.Halting.question_length`.
        seed: seed of the ``"random"`` method's generator (restarted on every prompt, batched or not).
        packing: how a prefill lays out its batch for the decoder layers (``docs/packed.md``).
            ``"off"`` (default): left-padded ``(batch, T_max)``, today's path. ``"ragged"``: a batch
            whose prompts differ in length runs packed, its valid tokens laid end to end with one
            causal attention per prompt through FlexAttention (compiled on a GPU), so padding costs
            no FLOPs before or after ``l_s``; a batch of equal lengths keeps the padded path.
            ``"always"``: every prefill runs packed. Outputs (logits ``(batch, T_max, V)``, left-padded,
            zeros on padding), KV cache layout and decoding are the same in every mode (decode
            steps: :mod:`dash_vl.engine.decode_kernels`).
        vision_ratio: ``ρ_v`` in [0, 1), encoder-side halting (ViT-DASH, :mod:`dash_vl.engine.vision_encoder`):
            the fraction of each unit's patches (an image or video frame; for tiled encoders a
            tile) halted inside the vision encoder at block ``l_v``; they keep their state and still
            reach the merger / projector, so the language model sees the same visual tokens.
            Unset (``None``, the default), the encoder runs unmodified; ``0`` runs it through the
            encoder engine with nothing halted. It combines with every language-model method but
            VisionZip (which reads the encoder's last block over all patches).
        vision_start_layer: the encoder's decision block ``l_v``: an ``int`` block index in
            ``[0, depth)`` or a ``float`` in (0, 1), a fraction of the encoder's depth
            (``floor(vision_start_layer * depth)``, at least 1); default ``0.4``.
        vision_rule: which patches the encoder halts: ``"dash"`` (default), the lowest ``Δattn``;
            ``"random"``, a uniformly random set of the same size (seeded by ``seed``), the
            ablation that tells whether the score matters.
        compiled_decode: whether decode steps over a static KV cache (``generate(...,
            cache_implementation="static")``, :mod:`dash_vl.engine.static_slots`) run on a GPU as a CUDA graph
            captured at the second step (default ``True``); ``False`` runs them eagerly. With it set,
            :func:`dash_vl.load`'s answers, the CLI and the lmms-eval models generate with a static cache
            on a GPU; unset, with the dynamic cache and the engine's eager decode steps.
    """

    method: str = field(default="dash", metadata={"choices": tuple(METHODS)})
    ratio: float = 0.0
    start_layer: int | float | None = None
    stage_layers: tuple[int | float, ...] | None = None
    observation_window: int = 64
    scope: Scope | None = None
    question: QuestionMode = "halted"
    seed: int = 0
    packing: PackingMode = "off"
    vision_ratio: float | None = None
    vision_start_layer: int | float = 0.4
    vision_rule: VisionRule = "dash"
    compiled_decode: bool = True

    def __post_init__(self) -> None:
        self._plain_numbers()
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)):
            raise TypeError(f"ratio must be a float in [0, 1), got {self.ratio!r}")
        if not 0.0 <= float(self.ratio) < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.start_layer is None:
            object.__setattr__(self, "start_layer", METHODS[self.method].default_start_layer)
        if self.scope is None:
            object.__setattr__(self, "scope", METHODS[self.method].default_scope)
        if isinstance(self.start_layer, bool) or not isinstance(self.start_layer, (int, float)):
            raise TypeError(
                f"start_layer must be an int layer index or a float fraction of the depth, got {self.start_layer!r}"
            )
        if isinstance(self.start_layer, float) and not 0.0 < self.start_layer < 1.0:
            raise ValueError(f"start_layer as a fraction of the depth must be in (0, 1), got {self.start_layer}")
        lowest = METHODS[self.method].lowest_start_layer
        if isinstance(self.start_layer, int) and self.start_layer < lowest:
            raise ValueError(f"start_layer must be >= {lowest} for method {self.method!r}, got {self.start_layer}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.question not in QUESTION_MODES:
            raise ValueError(f"question must be one of {QUESTION_MODES}, got {self.question!r}")
        if self.packing not in PACKING_MODES:
            raise ValueError(f"packing must be one of {PACKING_MODES}, got {self.packing!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        if not isinstance(self.compiled_decode, bool):
            raise TypeError(f"compiled_decode must be a bool, got {self.compiled_decode!r}")
        self._check_stage_knobs()
        self._check_vision_knobs()

    def _plain_numbers(self) -> None:
        """Numbers of other types (``numpy.float32(0.5)``, ``numpy.int64(3)``) become Python ``float`` / ``int``;
        ``bool`` stays as given (refused below)."""
        for name in ("ratio", "start_layer", "seed", "vision_ratio", "vision_start_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or type(value) in (int, float):
                continue
            if isinstance(value, numbers.Integral):
                object.__setattr__(self, name, int(value))
            elif isinstance(value, numbers.Real):
                object.__setattr__(self, name, float(value))

    def _check_stage_knobs(self) -> None:
        method = METHODS[self.method]
        if self.stage_layers is None:
            object.__setattr__(self, "stage_layers", method.default_stage_layers)
        if not isinstance(self.stage_layers, (tuple, list)):
            raise TypeError(f"stage_layers must be a tuple of layer indices or depth fractions, got {self.stage_layers!r}")
        object.__setattr__(self, "stage_layers", tuple(self.stage_layers))
        for layer in self.stage_layers:
            if isinstance(layer, bool) or not isinstance(layer, (int, float)):
                raise TypeError(f"stage_layers entries must be int layer indices or float depth fractions, got {layer!r}")
            if isinstance(layer, float) and not 0.0 < layer < 1.0:
                raise ValueError(f"stage_layers fractions of the depth must be in (0, 1), got {layer}")
            if isinstance(layer, int) and layer < 1:
                raise ValueError(f"stage_layers layer indices must be >= 1, got {layer}")
        if self.stage_layers and not method.supports_stages:
            raise ValueError(
                f"stage_layers must be () for method {self.method!r}, which decides once; got {self.stage_layers}"
            )
        window = self.observation_window
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"observation_window must be an int >= 1, got {window!r}")

    def _check_vision_knobs(self) -> None:
        if self.vision_ratio is not None:
            if isinstance(self.vision_ratio, bool) or not isinstance(self.vision_ratio, (int, float)):
                raise TypeError(f"vision_ratio must be None or a float in [0, 1), got {self.vision_ratio!r}")
            if not 0.0 <= float(self.vision_ratio) < 1.0:
                raise ValueError(f"vision_ratio must be in [0, 1), got {self.vision_ratio}")
            if METHODS[self.method].needs_vision_evidence:
                raise ValueError(
                    f"vision_ratio cannot be combined with method {self.method!r}, which reads the vision encoder's "
                    "last block over all patches"
                )
        if self.vision_rule not in VISION_RULES:
            raise ValueError(f"vision_rule must be one of {VISION_RULES}, got {self.vision_rule!r}")
        layer = self.vision_start_layer
        if isinstance(layer, bool) or not isinstance(layer, (int, float)):
            raise TypeError(f"vision_start_layer must be an int block index or a float fraction of the depth, got {layer!r}")
        if isinstance(layer, float) and not 0.0 < layer < 1.0:
            raise ValueError(f"vision_start_layer as a fraction of the encoder's depth must be in (0, 1), got {layer}")
        if isinstance(layer, int) and layer < 0:
            raise ValueError(f"vision_start_layer must be >= 0, got {layer}")

    @classmethod
    def resolve(cls, config: HaltingConfig | None, knobs: dict) -> HaltingConfig:
        """``config`` as given, or one built from keyword ``knobs``; both at once is a ``TypeError``."""
        if config is not None and knobs:
            raise TypeError("pass either a HaltingConfig or keyword knobs, not both")
        return config if config is not None else cls(**knobs)

    def decision_layer(self, num_layers: int) -> int:
        """The decision layer ``l_s`` for a model of ``num_layers`` decoder layers.

        Raises:
            ValueError: if ``l_s`` falls outside ``[0, num_layers)``.
        """
        if isinstance(self.start_layer, float):
            layer = max(1, int(self.start_layer * num_layers))
        else:
            layer = self.start_layer
        if not 0 <= layer < num_layers:
            raise ValueError(f"start_layer must be in [0, {num_layers}) for a {num_layers}-layer model, got {layer}")
        return layer

    def decision_layers(self, num_layers: int) -> list[int]:
        """Every decision layer, ``l_s`` then :attr:`stage_layers`, for a model of ``num_layers`` layers.

        Raises:
            ValueError: if a stage layer falls outside ``[1, num_layers)`` or the layers do not ascend.
        """
        layers = [self.decision_layer(num_layers)]
        for entry in self.stage_layers:
            layer = max(1, int(entry * num_layers)) if isinstance(entry, float) else entry
            if not 1 <= layer < num_layers:
                raise ValueError(f"stage_layers must lie in [1, {num_layers}) for a {num_layers}-layer model, got {layer}")
            if layer <= layers[-1]:
                raise ValueError(
                    f"stage_layers must ascend after start_layer: layer {layer} follows layer {layers[-1]} "
                    f"(start_layer {self.start_layer}, stage_layers {self.stage_layers}, {num_layers} layers)"
                )
            layers.append(layer)
        return layers

    def vision_decision_layer(self, depth: int) -> int:
        """The encoder's decision block ``l_v`` for a vision encoder of ``depth`` blocks.

        Raises:
            ValueError: if ``l_v`` falls outside ``[0, depth)``.
        """
        layer = self.vision_start_layer
        if isinstance(layer, float):
            layer = max(1, int(layer * depth))
        if not 0 <= layer < depth:
            raise ValueError(f"vision_start_layer must be in [0, {depth}) for a vision encoder of {depth} blocks, got {layer}")
        return layer

    def ideal_speedup(self, num_layers: int) -> float:
        """Prefill speedup if every layer cost the same per token and every prompt token were eligible:
        ``L`` over the sum across layers of the fraction of tokens each runs on.

        With the decisions at layers ``l_0 < l_1 < ... < l_(S-1)`` (:meth:`decision_layers`) and ``l_S = L``,
        the layers before ``l_0`` run on all tokens and those from ``l_s`` to ``l_(s+1)`` on the method's
        :meth:`~dash_vl.methods.base.HaltingMethod.stage_retention` ``r_s = (1 - ρ)^(s + 1)``:
        ``L / (l_0 + Σ_s (l_(s+1) - l_s) r_s)``; for one decision ``L / (l_s + (L - l_s)(1 - ρ))``.
        """
        layers = self.decision_layers(num_layers)
        method = METHODS[self.method]
        active = float(layers[0])
        for stage, (begin, end) in enumerate(zip(layers, [*layers[1:], num_layers])):
            active += (end - begin) * method.stage_retention(self.ratio, stage)
        return num_layers / active
