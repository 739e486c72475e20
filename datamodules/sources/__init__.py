"""Where images come from: the CIFAR releases, class folders, tar shards, downloads and in-memory tensors."""
