"""Face-recognition door-access appliance runtime.

Nothing heavy is imported here: importing ``edge`` must stay cheap so that the
CLI, the config checker and the systemd ``ExecStartPre=`` start fast.
"""

__version__ = "0.1.0"
