"""Built-in labelled corpora, generated from Debian packages and code (no downloads).

Each builder writes one *corpus folder*: the data files plus a `manifest.csv`
(see `training.corpora.manifest`) that gives every file its label and its
split (`train` or `test`), so the evaluation code can run the paper's
linear-probe protocol on it, and the training code can learn from the same
folder unlabelled (it ignores the manifest).

- `speech.build_speech`: espeak-ng reading generated sentences with many
  voices, pitches and speeds; label = speaker (speaker identification).
- `text.build_fortunes`: the fortune-mod/fortunes quotes, label = category;
  `text.build_text_folder`: any folder of .txt files, label = parent folder.
- `images.build_images`: procedural textures and shapes, label = class,
  under `out/shapes/`, and scikit-learn's 8x8 digits under `out/digits/`.

Real data that Debian packages ship:

- `voices.build_voices`: recorded human speakers (Asterisk's prompts; the KDE
  games' voices on request), label = speaker.
- `fashion.build_fashion`: Fashion-MNIST product photos, label = class.
- `manpages.build_manpages`: the Linux man pages, label = section.

All builders are deterministic under their seed. Import the builders from
their modules; this package only defines the shared error so that importing
it stays cheap.
"""

from __future__ import annotations


class CorpusError(Exception):
    """A corpus cannot be built; the message is one line that says why and what to do."""
