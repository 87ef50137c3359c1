"""What is learned offline and loaded at run time: ``LinearModel`` and its hashed features
(``linear``, ``features``), the rung router (``router``) and the task router (``task_router``)."""
