//! FAT32 writer (in progress).
