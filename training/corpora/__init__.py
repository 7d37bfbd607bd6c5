"""Built-in labelled corpora, generated from Debian packages and code (no downloads).

Each builder writes one corpus folder: the data files plus a `manifest.csv`
(see `training.corpora.manifest`) with every file's label and split, for the
linear probe; training learns from the same folder without the labels. The
builders are in `speech`, `text`, `images`, `voices`, `fashion` and `manpages`,
all deterministic under their seed; docs/training.md (Built-in corpora)
describes each. Import the builders from their modules; this package only
defines the shared error so that importing it stays cheap.
"""

from __future__ import annotations


class CorpusError(Exception):
    """A corpus cannot be built; the message is one line that says why and what to do."""
