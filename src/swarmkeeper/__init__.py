"""swarmkeeper keeps a Docker Swarm matching a desired-state directory.

Importing the package does no I/O and pulls in none of the heavy dependencies:
``swarmkeeper --version`` has to answer quickly, so each subcommand imports
what it needs when it runs.
"""

__version__ = "0.1.0.dev0"
