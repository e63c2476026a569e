# Failback, step 4 (the seed's Terraform tab): `terraform output disaster_recovery_status`.
#
# The roles as they are once the integration is applied. Read through data sources that depend
# on the integration: a resource's own computed disaster_recovery_role is read at the start of
# the run, before the integration changed the roles.
data "aiven_postgresql" "primary" {
  project      = var.project_name
  service_name = aiven_postgresql.primary.service_name
  depends_on   = [aiven_service_integration.disaster_recovery_restored]
}

data "aiven_postgresql" "recovery" {
  project      = var.project_name
  service_name = aiven_postgresql.recovery.service_name
  depends_on   = [aiven_service_integration.disaster_recovery_restored]
}

output "disaster_recovery_status" {
  description = "State and disaster recovery role of each service (terraform output disaster_recovery_status)"
  value = {
    (data.aiven_postgresql.primary.service_name) = {
      state                  = data.aiven_postgresql.primary.state
      disaster_recovery_role = data.aiven_postgresql.primary.disaster_recovery_role
    }
    (data.aiven_postgresql.recovery.service_name) = {
      state                  = data.aiven_postgresql.recovery.state
      disaster_recovery_role = data.aiven_postgresql.recovery.disaster_recovery_role
    }
  }
}
