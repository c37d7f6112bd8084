from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("hello/", views.hello),
    path("sync/", views.sync_view),
    path("async/", views.async_view),
    path("users/", views.users),
    path("stream/", views.stream),
    path("tasks/", views.tasks),
    path("slow/", views.slow),
]
