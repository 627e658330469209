"""geomix: the KL-symmetric geometric-mean sampling distribution, solved, verified and reported.

q_alpha ∝ pi_theta^alpha · pi_t^(1-alpha); alpha* solves KL(q||pi_theta) = KL(q||pi_t), which makes
q* the Chernoff point of (pi_theta, pi_t) and the common KL value the Chernoff information.
"""

__version__ = "0.1.0"
