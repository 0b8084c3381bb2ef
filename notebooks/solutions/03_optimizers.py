"""Notebook 03's exercises, solved."""


def momentum_step(w, grad, velocity):
    velocity = 0.9 * velocity + grad
    return w - 0.1 * velocity, velocity


def adam_step(w, grad, m, v, t):
    lr, (b1, b2), eps = 0.01, (0.9, 0.999), 1e-8
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad**2
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return w - lr * m_hat / (v_hat.sqrt() + eps), m, v
