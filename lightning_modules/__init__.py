"""Lightning side of the simulator: DataModules, the classifier module and config builders."""
