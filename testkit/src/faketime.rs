//! Debian's `faketime` (libfaketime): a preload library that makes a dynamically linked
//! program see another time (a jump of years, or a clock that runs faster), used on the real
//! agent binary.

use std::path::Path;

/// libfaketime's preload library from Debian's `faketime` package; `None` (after a loud skip
/// message) when it is missing, a failure under `FLEET_REQUIRE_FAKETIME=1`.
pub fn libfaketime(test: &str) -> Option<&'static str> {
    const LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if Path::new(LIB).is_file() {
        return Some(LIB);
    }
    assert!(
        std::env::var("FLEET_REQUIRE_FAKETIME").as_deref() != Ok("1"),
        "{LIB} missing (FLEET_REQUIRE_FAKETIME=1): install Debian's faketime"
    );
    eprintln!("\n*** SKIP {test}: {LIB} missing (apt-get install faketime) ***\n");
    None
}
