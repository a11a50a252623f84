"""The command-line applications of ``python -m infogain <command>`` (see :mod:`.cli`).

Each module is one command with its own ``main(argv)``; they sit on top of the public
packages (:mod:`infogain.models`, :mod:`infogain.samplers`, :mod:`infogain.eis`,
:mod:`infogain.tasks`, :mod:`infogain.evaluation`) and nothing below imports them.
"""
