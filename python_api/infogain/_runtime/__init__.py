"""Process-wide runtime policy shared by the applications and the evaluation layer: CPU thread
counts (:mod:`.threads`) and the allocator setting (:mod:`.allocator`)."""
