"""Notebook 04's exercises, solved."""


def conv_output_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def accuracy(logits, labels):
    return (logits.argmax(1) == labels).float().mean().item()
