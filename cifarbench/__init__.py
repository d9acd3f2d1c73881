"""cifarbench: train, convert, classify and benchmark CIFAR-10 CNNs across runtimes."""

__version__ = "0.1.0"

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
