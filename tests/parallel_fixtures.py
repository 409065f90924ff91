"""A tiny German-English parallel corpus for the translation tests (conftest's ``parallel`` fixture)."""

DE = ["ein hund läuft", "zwei katzen schlafen", "ein mann liest ein buch", "eine frau singt",
      "kinder spielen im park", "ein hund schläft", "zwei männer laufen", "eine katze liest"] * 6
EN = ["a dog runs", "two cats sleep", "a man reads a book", "a woman sings",
      "children play in the park", "a dog sleeps", "two men run", "a cat reads"] * 6


def write_parallel(d, train=slice(0, 40), val=slice(40, 48)):
    """DIR/{train,val}.{de,en}: the first 40 pairs train, the last 8 validate."""
    d.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("val", val)):
        (d / f"{split}.de").write_text("\n".join(DE[rows]) + "\n", encoding="utf-8")
        (d / f"{split}.en").write_text("\n".join(EN[rows]) + "\n", encoding="utf-8")
    return d
