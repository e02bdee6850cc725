//! Inputs: image files, folders and list files, and the dataset layout of the reference.
