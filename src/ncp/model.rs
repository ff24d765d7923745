//! Typed wire models of Media Intelligence answers (being written).
