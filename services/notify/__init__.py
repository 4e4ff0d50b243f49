"""notify: sends the step-up code, the result notice and the receipt notice by SMS, once each."""
