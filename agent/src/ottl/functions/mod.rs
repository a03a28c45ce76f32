//! The OTTL functions the agent offers: editors (lowercase, change the item) and converters
//! (uppercase, return a value), checked at load and run per item.

pub mod converters;
pub mod editors;
