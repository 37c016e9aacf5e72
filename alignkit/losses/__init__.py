"""Losses as pure functions of tensors: tensors in, `(loss, metrics)` out.

Conventions shared by every module here:
- Shapes: B batch, T tokens, G samples per prompt, V vocabulary.
- Masks: 1 = the token counts, 0 = it does not (padding, prompt).
- No model calls, no config objects, no collectives; only torch is imported.
- `metrics` values are detached scalar tensors, named as the recipes log them.
"""
