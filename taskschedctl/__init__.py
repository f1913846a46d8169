"""taskschedctl: the control CLI of taskschedd."""
