//! The text of a caught panic, for the errors that report one.

use std::any::Any;

/// The message a panic was raised with (`panic!("...")` gives a `&str` or a `String`), if it carried one.
pub fn message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}
