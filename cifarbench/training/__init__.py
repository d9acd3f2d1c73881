"""`cifarbench train`: the loop (train.py) and its data, state and optimizer pieces."""
