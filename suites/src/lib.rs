//! Shared helpers of the suites live in `tests/common`; this library is empty.
