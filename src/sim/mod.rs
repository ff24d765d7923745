//! The Media Intelligence simulator (being written).
