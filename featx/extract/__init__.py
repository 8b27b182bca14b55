"""Images to descriptors, into caches that survive faults: what every engine is (engine), the
Extractor (extractor), the one driver that brings caches up to date (update), what each row was
computed from (identity), the HDF5 format (cache), what extraction costs (cost), and the Ray
engine (distributed, watchdog)."""
