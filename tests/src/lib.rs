//! Root integration tests live in `tests/`; see README.md.
