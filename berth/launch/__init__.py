"""The launch path: a request becomes a running tool, one recorded step at a time.

    requests.py       what the front doors call: request_launch, request_stop (a row, then a message)
    tasks.py          the Huey queue and the tasks the worker runs (launch, stop, and every
                      minute the upkeep)
    state_machine.py  advance a launch by one recorded step under a lease; finish a stop
    upkeep.py         the reconciler and the idle culler

Dependencies run one way, requests → tasks → upkeep → state_machine → backends, so that no
module imports one that imports it back.
"""
