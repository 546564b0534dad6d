//! Local cache archives for the `cache:` keyword, keyed by project and protection.
