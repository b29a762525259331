"""MNIST readers, class-subset splits and the three training streams."""
