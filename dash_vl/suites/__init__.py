"""Evaluation suites with exact answers: offline retrieval prompts, code completion on real code,
synthetic scenes; prompt splitting, scoring and resumable sweeps."""
