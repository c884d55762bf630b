"""The halting engine: the decoder loop of the language model (:mod:`.language_model`), the loop of a
vision tower (:mod:`.vision_encoder`), and what only they use: the decision's inputs
(:mod:`.decision_inputs`) and its output (:mod:`.active_set`), token layouts and packing (:mod:`.layouts`,
:mod:`.packed_attention`), each layer's mask and rotary inputs (:mod:`.layer_inputs`, :mod:`.masks`),
decode kernels, FLOP counts and the vision encoder's evidence."""
