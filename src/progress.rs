//! progress (being written).
