"""Near-duplicate removal with MinHash LSH (megasynth.data.near_dedup) on real near-duplicate texts."""

from __future__ import annotations

import pytest

from megasynth.config import DedupConfig
from megasynth.data.near_dedup import NearDedupIndex, dedup_records, shingles
from megasynth.utils import MegasynthError

RIVER = (
    "The river rises in the northern hills and flows south for two hundred miles before it reaches the sea. "
    "Farmers along its banks grow wheat, barley and beans, and the spring floods bring fresh soil every year. "
    "In the old town a stone bridge of seven arches crosses the water; it was finished in the year 1402. "
    "Merchants carried wool and salt over the bridge, and the tolls paid for the town's first school. "
    "Today the valley is known for its orchards, and apples and pears are sent to markets across the country. "
    "A railway was built beside the river in 1870, and the journey to the coast took only three hours.")
# The same text as another generation might phrase it: two words changed, case/punctuation/spacing differ.
RIVER_EDITED = (RIVER.replace("two hundred miles", "two hundred kilometres").replace("wheat", "oats")
                .upper().replace(";", ".").replace(", ", " , "))
# A rewrite of the first half only: shares about half of the shingles (not a near duplicate at 0.72).
RIVER_HALF = RIVER[:len(RIVER) // 2] + (
    " Later the mills closed, the young people moved to the cities, and the school was turned into a museum "
    "about the history of the valley and its people, which visitors from far away come to see each summer.")
CASTLE = (
    "The castle stands on a rock above the harbour. Its walls were raised by the duke after the siege of "
    "1280, and the great hall still holds the long oak table where the council met. In the nineteenth "
    "century the building served as a prison, and later as a barracks; since 1950 it has been a museum "
    "with a fine collection of armour, maps and ship models that tell the story of the port.")


def _jaccard(a: str, b: str) -> float:
    x, y = set(shingles(a)), set(shingles(b))
    return len(x & y) / len(x | y)


def test_shingles_are_word_5grams_of_simplified_text():
    assert shingles("Café, CAFÉ au lait!") == [b"cafe cafe au lait"]  # fewer than 5 words: one shingle
    sh = shingles("One two three four five six")
    assert sh == [b"one two three four five", b"two three four five six"]
    assert shingles(" ... ") == []
    assert _jaccard(RIVER, RIVER_EDITED) > 0.8 and _jaccard(RIVER, RIVER_HALF) < 0.6


def test_near_duplicates_are_found_and_the_first_is_kept():
    idx = NearDedupIndex()
    assert idx.offer("river", RIVER) is None
    assert idx.offer("castle", CASTLE) is None
    assert idx.offer("river-edited", RIVER_EDITED) == "river"
    assert idx.offer("river-exact", RIVER) == "river"
    assert idx.offer("river-half", RIVER_HALF) is None  # about half the shingles shared: kept
    assert idx.offer("castle-again", CASTLE.lower()) == "castle"
    c = idx.counts()
    assert (c["checked"], c["kept"], c["near_duplicates"], c["indexed"]) == (6, 3, 3, 3)
    assert c["threshold"] == 0.72 and c["ngram_size"] == 5 and c["num_perm"] == 112
    assert c["bands"] * c["rows"] <= 112


def test_dedup_records_is_deterministic_and_resumable():
    recs = [{"id": f"r{i}", "text": t} for i, t in
            enumerate([RIVER_EDITED, CASTLE, RIVER, RIVER_HALF, CASTLE.replace("1280", "1281"), RIVER])]
    idx = NearDedupIndex()
    kept = [r["id"] for r in dedup_records(recs, index=idx)]
    assert kept == ["r0", "r1", "r3"]  # the first of each cluster, in offer order
    assert [r["id"] for r in dedup_records(recs)] == kept  # same order, same result
    # resume: rebuild the index from the records kept so far, then continue with the rest
    resumed = NearDedupIndex()
    for r in recs[:2]:
        resumed.add(r["id"], r["text"])
    rest = [r["id"] for r in dedup_records(recs[2:], index=resumed)]
    assert rest == ["r3"] and resumed.counts()["near_duplicates"] == 3
    with pytest.raises(MegasynthError, match="indexed twice"):
        resumed.add("r0", RIVER)


def test_datatrove_banding_threshold_and_bad_settings():
    idx = NearDedupIndex(DedupConfig(bands=14))
    assert (idx.bands, idx.rows) == (14, 8)  # datatrove's 14 buckets x 8 hashes
    strict = NearDedupIndex(DedupConfig(threshold=0.99))
    strict.offer("a", RIVER)
    assert strict.offer("b", RIVER_EDITED) is None and strict.offer("c", RIVER.lower()) == "a"
    no_verify = NearDedupIndex(DedupConfig(verify=False))
    assert no_verify.offer("a", RIVER) is None and no_verify.offer("b", RIVER) == "a"
    for bad, field in ((dict(threshold=0.0), "threshold"), (dict(ngram_size=0), "ngram_size"),
                       (dict(num_perm=2), "num_perm"), (dict(bands=1), "bands")):
        with pytest.raises(MegasynthError, match=rf"generation\.dedup\.{field}:"):
            NearDedupIndex(DedupConfig(**bad))
