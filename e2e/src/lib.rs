//! End-to-end tests live in `tests/`: they run the real `fleet-controller` and `fleet-agent`
//! binaries (built by `support::bins`) against real `git daemon` servers and the real Docker
//! engine. This library is empty on purpose.
