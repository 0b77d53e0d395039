"""Weight-space geometry: the spectrum metrics (:mod:`.spectrum`) and the cached base SVD (:mod:`.base_svd`)."""
