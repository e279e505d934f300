"""The top floor: a study's stages declared once (:mod:`.stages`), run in order (:mod:`.runner`), its training
runs planned (:mod:`.runs`) and launched under ``torchrun`` (:mod:`.launch`). Stage packages never import it."""
