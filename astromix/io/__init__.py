"""Reading and writing astromix objects: ASDF (:mod:`astromix.io.asdf`) and forcepho's HDF5
PSF mixtures (:mod:`astromix.io.forcepho`)."""
