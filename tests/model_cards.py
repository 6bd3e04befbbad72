"""A model card that tries everything a card should not be able to do, for the catalog's unit and browser tests."""

HOSTILE_CARD = """---
license: mit
tags: [vision, front-matter-tag]
---
# Digits classifier

An MLP for 8x8 digits.

- fast
- small

```python
print("hello")
```

| metric | value |
|--------|------:|
| accuracy | 0.97 |

<script>window.pwned = 1; document.title = "pwned"</script>
<img src=x onerror="window.pwned = 2">
[click me](javascript:window.pwned=3) [again](JaVaScRiPt:window.pwned=4) [entity](&#106;avascript:window.pwned=5)
<javascript:window.pwned=6> [data](data:text/html,<script>window.pwned=7</script>) [tab](java\tscript:x)
![tracker](https://tracker.example/pixel.png) [home](https://example.org/model) [licence](LICENSE)
[out](../../../etc/passwd) [far](//evil.example/x)
"""
LICENCE = "MIT License\n\nPermission is hereby granted, free of charge, <to any person>...\n"
