"""The diffusion process: logSNR schedules, parametrizations, losses and samplers.

Nothing here imports the network or the data code; the model enters as a callable.
"""
