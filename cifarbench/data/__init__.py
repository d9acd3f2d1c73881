"""Reading data: CIFAR-10 sources, image discovery, the one image loader and its memory bounds."""
