"""The top floor: a study's stages declared once (:mod:`.stages`), run in order (:mod:`.runner`), its training
runs planned (:mod:`.runs`; a ``sweep:`` grid by :mod:`.sweep`) and launched under ``torchrun`` (:mod:`.launch`,
recording each attempt: :mod:`.attempts`); sweeps run through executors (:mod:`.executors`) from the
``megasynth sweep`` commands (:mod:`.sweep_cli`). Stage packages never import it."""
