"""Infrastructure every stage shares: errors, logging, params, atomic writes, hashing, devices."""
