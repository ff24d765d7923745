//! The Media Intelligence HTTP client (being written).
