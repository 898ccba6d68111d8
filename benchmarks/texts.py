"""Synthetic texts shared by the encoder benchmarks (no data needed): short sentences and long
passages built from one word list, so every benchmark encodes the same inputs."""

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "researchers",
    "measure",
    "protein",
    "expression",
    "in",
    "mouse",
    "models",
    "of",
    "chronic",
    "inflammation",
    "and",
    "report",
    "significant",
    "effects",
]
SHORT = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(6 + i % 8)) + "." for i in range(256)]


def passages(n: int, words: int) -> list[str]:
    """n passages of `words` words (longer than max_length tokens, so they are truncated)."""
    return [" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(words)) for i in range(n)]
