"""Images to descriptors, into caches that survive faults: the Extractor (extractor), the one
driver that brings caches up to date (update), what each row was computed from (identity), the
HDF5 format (cache), and the Ray engine (distributed, watchdog)."""
