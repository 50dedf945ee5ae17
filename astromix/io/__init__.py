"""Reading and writing astromix objects: ASDF (:mod:`astromix.io.asdf`) and other formats."""
