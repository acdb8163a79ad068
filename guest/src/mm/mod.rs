//! The memory model: sparse memmap in sections and subsections, page states, frame allocator.
