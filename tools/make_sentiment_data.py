"""Generate the course's sentiment dataset: data/sentiment/{train,validation,test}.csv.

    python tools/make_sentiment_data.py             # regenerate the three CSV files
    python tools/make_sentiment_data.py --check     # regenerate in memory, compare with the files
    python tools/make_sentiment_data.py --baseline  # TF-IDF + logistic regression accuracy, per kind

Short English reviews in four domains (movie, product, restaurant, hotel), composed by a seeded
generator from hand-written pieces (``sentiment_pieces.py`` next to this file). Four kinds of review:

* plain     - one to three same-polarity statements ("The steak was tender and juicy.");
* negation  - the verdict is carried by a negation ("The plot wasn't predictable at all." -> positive);
* contrast  - two opposite statements; the main clause carries the verdict (rule below);
* idiom     - hand-written understatement and light sarcasm ("Let's just say we checked out a day early.").

The contrast rule: the clause introduced by "although", "even though", "while", "despite", "sure",
"I'll admit" is the concession; the verdict is the other clause (the one after "but", "yet",
"still", "however", "that said"). The verdict clause is always marked as the one that matters
(an intensifier, a softened concession, or a phrase such as "and that is what I'll remember"),
and its aspect weighs at least as much as the concession's (``WEIGHT`` in the pieces).

Splits: the idioms and the scene-setting sentences ("We stayed three nights in early May.") are
partitioned between the splits, so validation and test use ones the training split never saw.
Every candidate review is rejected if its word set has Jaccard similarity >= MAX_JACCARD with any
review already accepted (any split), so there are no near-duplicates anywhere.
Every draw comes from ``random.Random`` generators seeded from ``SEED``: the output is byte-for-byte
reproducible.
"""
from __future__ import annotations

import argparse
import csv
import io
import random
import re
import sys
from pathlib import Path

from minilora.files import write_atomic

if __package__:  # python -m tools.make_sentiment_data, or imported as tools.make_sentiment_data
    from . import sentiment_pieces as P
else:  # python tools/make_sentiment_data.py: Python puts tools/ first on sys.path
    import sentiment_pieces as P

SEED = 5
ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "data" / "sentiment"
DOMAINS = ("movie", "product", "restaurant", "hotel")
LABELS = ("negative", "positive")
PER_CELL = {"test": 50, "validation": 50, "train": 200}  # reviews per (domain, label)
SPLIT_SHARE = {"train": 0.6, "validation": 0.2, "test": 0.2}  # of the partitioned pieces
KIND_SHARE = {"plain": 0.44, "negation": 0.22, "contrast": 0.22, "idiom": 0.12}
MAX_JACCARD = 0.75
MAX_WORDS = 40
P_CONTEXT = 0.3


def words(text: str) -> frozenset[str]:
    """The lower-cased word set used for the near-duplicate check (also used by the tests)."""
    return frozenset(re.findall(r"[a-z0-9]+", text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b)


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


# ----------------------------------------------------------------------------- adjectives
def adj_ok(adj: str, use: str) -> bool:
    """Flags (see sentiment_pieces.py): 'x!' strong, 'x^' not gradable, 'x~' fixed phrase."""
    if use == "negate":
        return not adj.endswith(("!", "~"))
    if use == "attributive":
        return not adj.endswith("~") and " " not in adj
    if use == "concession":  # softened, or at least not stronger than the verdict
        return not adj.endswith(("!", "~", "^"))
    if use == "concession-np":
        return not adj.endswith(("!", "~")) and " " not in adj
    return True


def bare(adj: str) -> str:
    return adj.rstrip("!~^")


class Gen:
    def __init__(self, seed: int = SEED):
        self.rng = random.Random(seed)
        self.parts = self._partition()
        self.queues: dict[tuple[str, str, str], list[str]] = {}

    # -- pieces ------------------------------------------------------------------------
    def _partition(self) -> dict:
        """Deal the idioms and scene-setting sentences out to the splits (60/20/20)."""
        rng = random.Random(SEED * 1000 + 1)
        parts: dict = {s: {"context": {}, "idiom": {}} for s in PER_CELL}

        def deal(items: list[str]) -> dict[str, list[str]]:
            items = list(items)
            rng.shuffle(items)
            n = len(items)
            a, b = round(n * SPLIT_SHARE["train"]), round(n * (SPLIT_SHARE["train"] + SPLIT_SHARE["validation"]))
            return {"train": items[:a], "validation": items[a:b], "test": items[b:]}

        for d in DOMAINS:
            for split, items in deal(P.CONTEXTS[d]).items():
                parts[split]["context"][d] = items
            for lab in LABELS:
                for split, items in deal(P.IDIOMS[d][lab]).items():
                    parts[split]["idiom"][(d, lab)] = items
        for lab in LABELS:
            for split, items in deal(P.GENERIC_IDIOMS[lab]).items():
                for d in DOMAINS:
                    parts[split]["idiom"][(d, lab)] = parts[split]["idiom"][(d, lab)] + items
        return parts

    def choice(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def aspect(self, domain: str, exclude=()):
        while True:
            a = self.choice(P.ASPECTS[domain])
            if a[0] not in exclude:
                return a

    def adj(self, domain: str, aspect, pol: str, use: str = "any", avoid=()) -> str:
        own = aspect[2] if pol == "positive" else aspect[3]
        generic = P.GENERIC_ADJ[domain][pol] if aspect[4] else []
        pool = [a for a in own + own + generic if adj_ok(a, use) and bare(a) not in avoid]
        return self.choice(pool)  # an aspect's own adjectives are twice as likely as generic ones

    # -- clauses -----------------------------------------------------------------------
    @staticmethod
    def be(aspect) -> str:
        return "were" if aspect[1] else "was"

    @staticmethod
    def pron(aspect) -> str:
        return "they" if aspect[1] else P.PRONOUNS.get(aspect[0], "it")

    def clause(self, domain: str, pol: str, mode: str = "plain", exclude=(), avoid=()) -> tuple[str, str, str]:
        """``(clause, aspect noun phrase, adjective)``.

        mode: plain (sometimes intensified or softened), verdict (intensified), concession (never
        stronger than the verdict, often softened)."""
        a = self.aspect(domain, exclude)
        adj = self.adj(domain, a, pol, "concession" if mode == "concession" else "any", avoid)
        r = self.rng.random()
        mod = ""
        if adj.endswith("~"):
            pass
        elif mode == "verdict" or (mode == "plain" and r < 0.25):
            pool = {"!": P.STRONG_INTENSIFIERS, "^": P.PLAIN_INTENSIFIERS}.get(adj[-1], P.INTENSIFIERS)
            mod = self.choice(pool)
        elif (mode == "concession" and r < 0.6) or (mode == "plain" and r > 0.85 and adj_ok(adj, "concession")):
            mod = self.choice(P.SOFTENERS[pol])
        return f"{a[0]} {self.be(a)} {mod + ' ' if mod else ''}{bare(adj)}", a[0], bare(adj)

    def np(self, domain: str, pol: str, exclude=(), avoid=()) -> str:
        """An attributive noun phrase for a concession: 'the slow service'."""
        a = self.aspect(domain, exclude)
        adj = bare(self.adj(domain, a, pol, "concession-np", avoid))
        return f"the {adj} {a[0][4:]}"

    def vp(self, domain: str, pol: str, weight: str = "any", about_not: str = "") -> str:
        """An event clause. ``weight``: "any", "weighty" (strong enough to be a contrast's verdict) or
        "slight" (slight enough to be its concession); ``about_not``: none about that aspect."""
        pool = [e for e in P.EVENTS[domain][pol]
                if weight == "any" or (weight == "slight") == e.endswith("*")]
        return self.choice([e.rstrip("*") for e in pool if about_not not in P.EVENT_ASPECTS.get(e.rstrip("*"), ())])

    def overall(self, domain: str, pol: str) -> str:
        return self.choice(P.OVERALL[domain][pol])

    # -- the four kinds ----------------------------------------------------------------
    def plain(self, d: str, pol: str) -> str:
        r = self.rng.randrange(12)
        c1, n1, a1 = self.clause(d, pol)
        if r == 0:
            return cap(c1) + "."
        c2, n2, a2 = self.clause(d, pol, exclude=(n1,), avoid=(a1,))
        if r == 1:
            return f"{cap(c1)} and {c2}."
        if r == 2:
            a = self.aspect(d)
            return f"I found {a[0]} {bare(self.adj(d, a, pol))}."
        if r == 3:
            return f"Honestly, {c1}. {self.overall(d, pol)}"
        if r == 4:
            return f"{cap(self.vp(d, pol))}, and {c1}."
        if r == 5:
            a = self.aspect(d, exclude=(n1,))
            return f"{cap(a[0])}? {cap(bare(self.adj(d, a, pol, avoid=(a1,))))}. {cap(c1)}."
        if r == 6:
            c3, _, _ = self.clause(d, pol, exclude=(n1, n2), avoid=(a1, a2))
            return f"{cap(c1)}, {c2}, and {c3}."
        if r == 7:
            return f"{cap(c1)}, which I didn't expect. {self.overall(d, pol)}"
        if r == 8:
            return f"{self.overall(d, pol)} {cap(c1)}."
        if r == 9:
            return f"{cap(c1)}. {cap(self.vp(d, pol))}."
        if r == 10:
            return f"{cap(c1)}, and {self.vp(d, pol)}."
        return f"{cap(c1)}. {cap(c2)}."

    def negation(self, d: str, pol: str) -> str:
        """A review whose verdict ``pol`` comes from negating a statement of the other polarity."""
        other = "negative" if pol == "positive" else "positive"
        a = self.aspect(d)
        adj = bare(self.adj(d, a, other, "negate"))
        np_, be, pron = a[0], self.be(a), self.pron(a)
        frames = [
            f"{cap(np_)} {be}n't {adj} at all.",
            f"{cap(np_)} {be} not {adj} in the slightest.",
            f"I wouldn't call {np_} {adj}{self.choice(P.NEG_TAILS)}.",
            f"{cap(np_)} {be} far from {adj}.",
            f"{cap(np_)} {be} anything but {adj}.",
            f"There was nothing {adj} about {np_}.",
            f"Nobody could honestly describe {np_} as {adj}.",
            f"I'd read that {np_} {be} {adj}, but {pron} {be}n't{self.choice(['', ' at all'])}.",
            f"I expected {np_} to be {adj}, but {pron} {be}n't{self.choice(['', ' at all'])}.",
            f"{cap(be)} {np_} {adj}? Not at all.",
            self.choice(P.VERB_NEGATIONS[pol]).format(np=np_, Np=cap(np_), be=be),
        ]
        if pol == "negative":
            frames += [f"{cap(np_)} {be} not exactly {adj}.",
                       f"Calling {np_} {adj} would be a stretch.",
                       f"I was hoping {np_} would be {adj}, but {pron} {be}n't."]
        else:
            frames += [f"I was worried {np_} would be {adj}, but {pron} {be}n't.",
                       f"{cap(np_)} {be}n't {adj} one bit."]
        s = self.choice(frames)
        r = self.rng.random()
        if r < 0.2:
            s += " " + self.overall(d, pol)
        elif r < 0.35:
            s += " " + cap(self.clause(d, pol, exclude=(np_,), avoid=(adj,))[0]) + "."
        return s

    def contrast(self, d: str, pol: str) -> str:
        """Concession (other polarity) + verdict (``pol``): the verdict clause carries the label."""
        other = "negative" if pol == "positive" else "positive"
        f = self.rng.randrange(17)
        marked = f in (1, 2, 14, 15, 16)  # "Sure, ...", "I'll admit ...", "in the end", "honestly", "Okay, ..."
        w = ""
        if f in (0, 3, 4, 7, 8, 9, 10, 11) and self.rng.random() < 0.75:
            w = self.choice(P.WEIGHTS)
        # an unmarked verdict clause is intensified, so that a reader agrees which clause wins
        vmode = "plain" if (marked or w) and self.rng.random() < 0.5 else "verdict"
        weight = P.WEIGHT[d]
        if self.rng.random() < 0.15:
            v, nv, wv = self.vp(d, pol, "weighty"), "", 3
        else:
            light = tuple(a[0] for a in P.ASPECTS[d] if weight.get(a[0], 2) < 2)
            v, nv, _ = self.clause(d, pol, vmode, exclude=light)
            wv = weight.get(nv, 2)
        # the concession weighs less than the verdict (or as much, when the verdict is marked),
        # and is never about what the verdict is about
        limit = wv if (marked or w) else wv - 1
        heavy = tuple(a[0] for a in P.ASPECTS[d] if weight.get(a[0], 2) > limit)
        heavy += (nv,) + P.EVENT_ASPECTS.get(v, ())
        if nv and limit >= 2 and self.rng.random() < 0.12:
            c = self.vp(d, other, "slight", about_not=nv)
        else:
            c = self.clause(d, other, "concession", exclude=heavy)[0]
        frames = [
            lambda: f"{cap(c)}, but {v}{w}.",
            lambda: f"Sure, {c}, but {v}.",
            lambda: f"I'll admit {c}, but {v}.",
            lambda: f"Although {c}, {v}{w}.",
            lambda: f"Even though {c}, {v}{w}.",
            lambda: f"{cap(v)}, even though {c}.",
            lambda: f"{cap(v)}, although {c}.",
            lambda: f"While {c}, {v}{w}.",
            lambda: f"{cap(c)}. Still, {v}{w}.",
            lambda: f"{cap(c)}. That said, {v}{w}.",
            lambda: f"{cap(c)}; however, {v}{w}.",
            lambda: f"Despite {self.np(d, other, exclude=heavy)}, {v}{w}.",
            lambda: f"{cap(v)} despite {self.np(d, other, exclude=heavy)}.",
            lambda: f"{cap(c)}, yet {v}.",
            lambda: f"Yes, {c}, but in the end {v}.",
            lambda: f"{cap(c)}, but honestly {v}.",
            lambda: f"{cap(v)}. Okay, {c}, but {self.choice(P.DISMISSALS)}.",
        ]
        return frames[f]()

    def idiom(self, d: str, pol: str, split: str) -> str:
        if pol == "negative" and self.rng.random() < 0.2:
            first = self.np(d, "negative")
            _, adj, noun = first.split(" ", 2)
            nps = f"{first} and {self.np(d, 'negative', exclude=('the ' + noun,), avoid=(adj,))}"
            s = self.choice(P.SARCASM).format(nps=nps)
        else:
            s = self.next_idiom(split, d, pol)
        return s

    def next_idiom(self, split: str, d: str, pol: str) -> str:
        """Deal the split's idioms in shuffled rounds, so each is used about equally often."""
        queue = self.queues.setdefault((split, d, pol), [])
        if not queue:
            queue.extend(self.parts[split]["idiom"][(d, pol)])
            self.rng.shuffle(queue)
        return queue.pop()

    # -- assembling a split ------------------------------------------------------------
    def review(self, kind: str, d: str, pol: str, split: str) -> str:
        body = {"plain": self.plain, "negation": self.negation, "contrast": self.contrast}.get(kind)
        text = self.idiom(d, pol, split) if body is None else body(d, pol)
        p_ctx = 0.7 if kind == "idiom" else P_CONTEXT
        if self.rng.random() < p_ctx:
            text = self.choice(self.parts[split]["context"][d]) + " " + text
        return text

    def generate(self) -> tuple[dict[str, list[dict]], list[tuple[str, str]]]:
        """``({split: rows}, [(text, kind), ...])``."""
        accepted: list[frozenset[str]] = []
        seen: set[str] = set()
        splits: dict[str, list[dict]] = {}
        kinds: list[tuple[str, str]] = []
        for split in ("test", "validation", "train"):
            rows = []
            n = PER_CELL[split]
            quota = {k: round(n * s) for k, s in KIND_SHARE.items()}
            quota["plain"] += n - sum(quota.values())
            for d in DOMAINS:
                for pol in LABELS:
                    for kind, k in quota.items():
                        got, tries = 0, 0
                        while got < k:
                            tries += 1
                            if tries > 20000:
                                raise RuntimeError(f"could not fill {split}/{d}/{pol}/{kind}")
                            text = self.review(kind, d, pol, split)
                            norm = " ".join(sorted(words(text)))
                            ws = words(text)
                            if norm in seen or len(text.split()) > MAX_WORDS:
                                continue
                            if any(jaccard(ws, o) >= MAX_JACCARD for o in accepted):
                                continue
                            seen.add(norm)
                            accepted.append(ws)
                            rows.append({"text": text, "label": pol, "domain": d})
                            kinds.append((text, kind))
                            got += 1
            self.rng.shuffle(rows)
            splits[split] = rows
        return splits, kinds


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["text", "label", "domain"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def baseline(splits: dict[str, list[dict]], kinds: list[tuple[str, str]]) -> None:
    """TF-IDF + logistic regression fitted on train, C chosen on validation; accuracy per kind."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    kind_of = dict(kinds)

    def accuracy(clf, vec, rows) -> tuple[float, dict[str, float]]:
        pred = clf.predict(vec.transform([r["text"] for r in rows]))
        per: dict[str, list[bool]] = {}
        for p, r in zip(pred, rows):
            per.setdefault(kind_of[r["text"]], []).append(p == r["label"])
        ok = [x for v in per.values() for x in v]
        return sum(ok) / len(ok), {k: sum(v) / len(v) for k, v in sorted(per.items())}

    for ngrams in ((1, 1), (1, 2)):
        vec = TfidfVectorizer(ngram_range=ngrams, sublinear_tf=True)
        x = vec.fit_transform([r["text"] for r in splits["train"]])
        y = [r["label"] for r in splits["train"]]
        fits = {c: LogisticRegression(C=c, max_iter=5000).fit(x, y) for c in (0.1, 0.3, 1, 3, 10, 30, 100)}
        best = max(fits, key=lambda c: accuracy(fits[c], vec, splits["validation"])[0])
        for split in ("train", "validation", "test"):
            acc, per = accuracy(fits[best], vec, splits[split])
            detail = ", ".join(f"{k} {v:.3f}" for k, v in per.items())
            print(f"ngram_range={ngrams} C={best:<4} {split:<10} accuracy {acc:.4f}   [{detail}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    ap.add_argument("--baseline", action="store_true", help="print the bag-of-words baseline, write nothing")
    args = ap.parse_args()
    splits, kinds = Gen().generate()
    if args.baseline:
        baseline(splits, kinds)
        return
    if args.check:
        bad = [s for s, rows in splits.items()
               if (OUT_DIR / f"{s}.csv").read_text(encoding="utf-8") != to_csv(rows)]
        if bad:
            sys.exit(f"differs from the generator output: {bad}")
        print("data/sentiment matches the generator")
        return
    for split, rows in splits.items():
        write_atomic(OUT_DIR / f"{split}.csv", to_csv(rows))
        print(f"wrote {OUT_DIR / f'{split}.csv'}: {len(rows)} rows")


if __name__ == "__main__":
    main()
